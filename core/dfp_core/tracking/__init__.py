"""MLflow adapters: the tracking server (``server``), what a run records beyond MLflow's own
(``runs``: lakeFS-pinned dataset inputs, JSON artifacts), the registry (``registry``: a version
registered with its lineage tags, a model URI resolved, a version loaded from a checked copy),
the model files' digests and signature (``integrity``, ``signing``) and the client's basic-auth
credentials (``auth``)."""
