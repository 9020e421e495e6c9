"""oseg3d: online 3D instance + semantic segmentation (ESAM-style) on ScanNet-format RGB-D data."""
__version__ = "0.1.0"
