"""Durable state: tables, sessions, CRUD and migrations."""
