"""The uncertainty-scoring service: REST (/v1) and Open Inference Protocol (/v2) over one data plane."""
