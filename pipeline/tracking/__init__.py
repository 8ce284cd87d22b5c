"""Every MLflow call of the pipeline (nothing else imports mlflow): the tracking store and runs
(`store`), logging into the active run (`active`), the training run (`training`), a sweep's
trial runs (`trials`), what inspect and evaluate log (`runs`), the model registry (`registry`,
and `pull` for predict) and the registered model's pyfunc (`pyfunc`, logged as code: it
imports only mlflow, pandas, mrcnn)."""
