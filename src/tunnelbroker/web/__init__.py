"""The web broker: REST API, portal, ``/nic/update`` and configuration downloads."""
