"""Spark jobs that build the KronoDroid Iceberg tables on lakeFS."""
