"""The pipeline in a workspace: mirrors ``dvc.yaml`` (one stage, one module).

``layout`` says where each stage writes, ``stages`` records a stage in DVC
and git, ``validate`` / ``train`` / ``evaluate`` are the stages, and
``retrain`` is the ordered retrain run the Prefect flow composes.
"""
