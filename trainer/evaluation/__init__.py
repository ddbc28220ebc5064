"""Evaluation: metrics (mAP, mAUC, d', top-1; retrieval R@K), running a model over eval shards,
embedding files, figures (t-SNE, loss curves) and reports (JSON + table). The `avsiam eval`,
`embed` and `plot` commands are thin wrappers over these modules."""
