"""Credit purchases through Stripe: checkout sessions and their fulfilment."""
