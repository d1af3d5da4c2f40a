"""The app layer: the entry points that wire the core (``dfp_core``) to its plugins (``dfp_spark``,
``dfp_feast``, ``dfp_kfp``): the ``dfp`` CLI and the quickstart. The Spark job's ``main`` and the
KFP components are entry points too; they stay beside their plugin, where the seed layout keeps
them. Nothing in ``dfp_core`` imports this package or a plugin."""
