"""The upstream client: spendgate's own keep-alive HTTP/1.1 pool and its error boundary.

``client.py`` keeps the connections and translates every client and OS error into the
``errors`` tree once; ``http1.py`` speaks HTTP/1.1 on asyncio with httptools' parser.
May import: ``config``, ``errors``. Nothing else of spendgate.
"""
