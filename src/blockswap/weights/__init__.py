"""Weight files: checkpoint I/O, ResNet layouts read from weights, and teachers resolved from files or names."""
