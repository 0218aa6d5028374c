"""C and CUDA source skeletons, installed with exprc as ``exprc.templates``."""
