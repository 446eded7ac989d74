"""`resnetlab bench`: throughput of resnetlab's training and inference side by side with the
loops users would write instead, and the machine's matmul ceiling, measured in one process."""
