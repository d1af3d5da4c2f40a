"""The fct table's entity index: its entity keys and splits in a narrow Iceberg table that the
transform writes in the same commit, so a retrieval reads the keys without decoding every
wide Avro row. It names the fct snapshot whose rows it lists; for any other snapshot the keys
come from the fct table itself.

Not in ``schema``: that module's bytes are part of the Feast definitions hash in every
dataset id, and the index changes no feature."""

from __future__ import annotations

TABLE = "fct_entity_index"  # in the fct table's namespace
COLUMNS = ("sample_id", "event_timestamp", "dataset_split")
# Table property: the fct snapshot id whose rows the index lists.
INDEXED_SNAPSHOT_PROPERTY = "dfp.indexed_snapshot_id"
