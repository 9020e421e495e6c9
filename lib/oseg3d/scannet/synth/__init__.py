"""A synthetic world in the real ScanNet v2 raw layout, for tests and benchmarks (`oseg3d synth`)."""
from oseg3d.scannet.synth.world import SynthSpec, write_world

__all__ = ["SynthSpec", "write_world"]
