"""KFP v2 lightweight components: a typed signature and one call into `oseg3d.steps` each.

Module level imports stdlib and kfp only (compiling a pipeline must not import torch); the image is
ours, tagged with the package version (override with OSEG3D_IMAGE).
"""
