"""The contract between agent and central: wire messages, RabbitMQ topology, plate normalisation."""
