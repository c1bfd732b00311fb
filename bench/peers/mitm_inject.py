"""mitmproxy addon for bench/run: the credential-injecting MITM a team might
script with mitmproxy. Sets Authorization on every request and sends every
connection to 127.0.0.1 (the bench's upstream), keeping the name for SNI and
certificate checks, as the other proxies' pins do."""

import os

from mitmproxy import http

BEARER = "Bearer " + os.environ["BENCH_TOKEN"]


class Inject:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.request.headers["Authorization"] = BEARER

    def server_connect(self, data) -> None:
        data.server.address = ("127.0.0.1", data.server.address[1])


addons = [Inject()]
