"""Airflow hooks and operators for the retail platform: thin wrappers that read Airflow
connections and call the plain functions of the ``retail`` package."""
