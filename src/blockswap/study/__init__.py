"""Evidence: ranking studies that score and train a pool, their statistics and reports."""
