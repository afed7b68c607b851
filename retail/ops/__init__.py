"""The platform's operations as plain functions (no Airflow import): replication checks and
repairs, materialized views and rollups, balance checks, pipeline audits. The DAGs call these
through the operators in plugins/retail_airflow/."""
