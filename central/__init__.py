"""GT-Vision central: ingests what agents send into PostgreSQL and object storage, serves admins."""
