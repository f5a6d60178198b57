"""Full-order data sources, each producing a :class:`mlasdi.data.SnapshotSet`."""
