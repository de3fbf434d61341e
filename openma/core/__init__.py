"""Pure logic over the ports: ids, time, pagination, JSON. Never imports an adapter."""
