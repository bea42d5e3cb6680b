"""kscli: the Ego-Exo4D fine-grained keystep recognition toolkit.

Two stages, two sub-packages: ``kscli.extract`` turns clips into an HDF5 feature store with a
frozen backbone, ``kscli.heads`` trains light heads on those features. ``kscli.data`` is the
benchmark itself as objects (labels, segments, the clip layout) and imports no torch.
"""

__version__ = "0.2.0"
