"""Development stack: runs PostgreSQL, RabbitMQ, an S3 server, Redis and an RTSP test camera natively."""
