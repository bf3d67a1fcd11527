"""The fairway middleware, one module each; ``dramatiq_fairway.setup`` fixes their order."""
