"""ClientApp: a partner site trains on its private caption or segmentation shards; only weights and scalars leave."""

from ovseg.integrations.flower import make_client_app

app = make_client_app()
