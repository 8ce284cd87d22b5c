"""MLflow: the tracking store and runs (`store`), the model registry (`registry`) and the
registered model's pyfunc (`pyfunc`, logged as code: it imports only mlflow, pandas, mrcnn)."""
