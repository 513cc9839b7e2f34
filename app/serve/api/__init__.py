"""HTTP surfaces: one router per API (/v1 REST, /v2 Open Inference Protocol, operator routes)."""
