"""asyncio listeners: TSP (UDP, TCP), TIC, heartbeat, and their mappings to the broker."""
