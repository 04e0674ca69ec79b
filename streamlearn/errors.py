"""One exception family. The CLI prints one line and exits 2; the worker fails the job without retry."""


class StreamlearnError(Exception):
    """Base class for every error a user can cause or fix."""


class InvalidDataset(StreamlearnError):
    """A dataset file is unreadable or malformed (the message names file, line and field)."""


class InvalidConfig(StreamlearnError):
    """A flag, setting, task name or sweep spec is out of range."""


class UnknownTask(StreamlearnError):
    """No task of that name in the catalogue."""


class UnknownJob(StreamlearnError):
    """No job with that id in the catalogue."""


class BackboneMismatch(StreamlearnError):
    """An artifact was trained on another backbone, or the resident backbone changed."""


class BackboneChanged(BackboneMismatch):
    """This worker's resident backbone no longer matches its fingerprint: it fails the job and refuses every later one."""


class UnsupportedBackbone(StreamlearnError):
    """The backbone's architecture has no module map."""


class ArtifactCorrupt(StreamlearnError):
    """An artifact or its sidecar does not match its recorded sha256."""


class ArtifactWriteFailed(StreamlearnError):
    """The artifact store could not be written (full, read-only, a file in the way); nothing partial is left."""


class BrokerUnavailable(StreamlearnError):
    """The message broker did not answer."""


class TransientError(StreamlearnError):
    """A dependency (database, artifact store) is briefly unavailable; the worker retries."""


class CatalogueUnusable(StreamlearnError):
    """The catalogue database is corrupt, not a catalogue, or not the one this process opened."""


class JobCancelled(StreamlearnError):
    """The job was cancelled (`streamlearn cancel`); it stops at its next step."""


class SourceInUse(StreamlearnError):
    """A task whose adapter other tasks fuse cannot be deleted (the message names them)."""
