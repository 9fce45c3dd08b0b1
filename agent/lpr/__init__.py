"""Licence-plate recognition on the agent (docs/design/lpr.md): frames sampled from cameras,
plates read with ONNX models, one read per vehicle passage, stored with its outbox row."""
