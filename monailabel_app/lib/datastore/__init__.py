from lib.datastore.dicomweb import UltrasoundDICOMwebDatastore, timeout_session
from lib.datastore.local import UltrasoundLocalDatastore

__all__ = ["UltrasoundDICOMwebDatastore", "UltrasoundLocalDatastore", "timeout_session"]
