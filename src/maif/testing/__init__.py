"""Test support shipped with MAIF, so every backend (ours or a third party's) is held to one standard.

:mod:`maif.testing.conformance` holds the base test classes each storage backend's test file
subclasses (ChunkStoreTests, MetadataIndexTests, VectorIndexTests, HotCacheTests, ObjectStoreTests).
It needs pytest, which is a development dependency, so it is not imported here.
"""
