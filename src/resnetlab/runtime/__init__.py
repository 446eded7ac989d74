"""How code runs on this machine: device and precision, processes (torchrun), compilation,
freed memory."""
