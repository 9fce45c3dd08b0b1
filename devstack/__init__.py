"""Development stack: PostgreSQL, RabbitMQ, S3, Redis and an RTSP test camera, run natively."""
