"""Scale-out on Ray (the `ray` extra): nothing outside this package imports ray, and importing
this package does not either; each module imports it inside what needs it.

cluster.py   connect to a cluster (or start a local one) and run functions as Ray tasks
embed.py     `mrl-deploy embed --ray`: a corpus embedded by Ray Data actors into shards
actors.py    shards of a ShardedIndex in Ray actors (`ShardedIndex.load(path, ray=True)`)
serve.py     `mrl-deploy serve --ray`: the FastAPI app as a Ray Serve ingress, an embedding
             deployment with @serve.batch, one deployment per index shard
"""
