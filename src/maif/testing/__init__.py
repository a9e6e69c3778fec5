"""Test support shipped with MAIF, so every backend (ours or a third party's) is held to one standard.

:mod:`maif.testing.conformance` holds the base test classes each storage backend's test file
subclasses (ChunkStoreTests, MetadataIndexTests, VectorIndexTests, HotCacheTests, ObjectStoreTests).
It needs pytest, which is a development dependency, so it is not imported here.

:mod:`maif.testing.hostile` crafts validly signed .maif files whose records break the format (one per
rule of SPEC section 4, and a 33 KB decompression bomb), for any reader to be tested against.
"""
