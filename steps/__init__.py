"""Step functions of the pipeline flow (`flows/prefix_rft_flow.py`), one module per stage.

Each takes a resolved config plus its inputs and returns a small JSON-able manifest; none imports
Metaflow, so every step runs (and is tested) as a plain function:

    start.py     start        validate config/Parameters/warm start, open the MLflow parent run
    data.py      filter_data  raw data -> the lineage's train/held-out parquet + epoch plan
    train.py     train_epoch  one epoch, checkpoints committed to the store, metrics to MLflow
    evaluate.py  plan_eval, eval_task, join_eval
    finish.py    end, and the exit hook's FAILED marking
    common.py    run context, lineage layout, tracker helpers
    flow_config.py  FlowConfig (training config + pipeline + tracking), the Metaflow config parser
"""
