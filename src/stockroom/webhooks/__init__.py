"""Webhook subscriptions and their delivery (Standard Webhooks), fed by the event log."""
