"""Operating-system helpers the core may use (memory faulted in ahead of use);
standard library only, no numerics and nothing of stream's own."""
