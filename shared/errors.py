"""The one exception type an app catches for bad files and bad releases on the device.

Every error the device-side API raises because a file it reads (the store,
an installed model, the neighbour index, the ``INSTALLED.json`` pointer) or a
release it was sent is damaged, malformed or refused derives from
:class:`DeviceDataError`; its message names the file (or release) and the
problem. The concrete types keep their older bases too, so code catching
``ValueError`` or ``RuntimeError`` keeps working:

==========================================  ===============  =====================
type                                        also a           raised for
==========================================  ===============  =====================
``dcrec.device.store.StoreError``                 ``RuntimeError``  the SQLite store
``dcrec.device.reranker.ModelLoadError``          ``RuntimeError``  an ONNX file
``dcrec.device.updates.ModelRejected``            ``RuntimeError``  a release (verify/install)
``dcrec.shared.neighbours.NeighbourIndexError``   ``ValueError``    a neighbour index
==========================================  ===============  =====================

Example::

    try:
        store = DeviceStore(path, on_damage="raise")
    except DeviceDataError as e:
        show_error(str(e))      # "<path>: ... (database disk image is malformed)"
"""

from __future__ import annotations


class DeviceDataError(Exception):
    """A file or release the device read is unusable; the message names it and the problem."""
