// A credential-injecting MITM proxy as many teams write one on
// github.com/elazarl/goproxy: intercept every CONNECT with a local CA, set
// Authorization on every request, verify the upstream against a CA file.
// Built by bench/install-peers; used by bench/run as a peer.
//
//	goproxy-peer -listen 127.0.0.1:0 -ca-cert ca.pem -ca-key ca-key.pem \
//	    -upstream-ca upstream-ca.pem -token TOKEN
//
// -blind NAME is tunnelled without interception (the bench's byte sink).
// Every destination name resolves to 127.0.0.1 (the bench's upstream), as
// the other proxies' pins do. Prints "listening on ADDR".
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync"

	"github.com/elazarl/goproxy"
)

// certCache keeps one minted leaf per host, as goproxy's docs recommend.
type certCache struct{ m sync.Map }

func (c *certCache) Fetch(host string, gen func() (*tls.Certificate, error)) (*tls.Certificate, error) {
	if v, ok := c.m.Load(host); ok {
		return v.(*tls.Certificate), nil
	}
	cert, err := gen()
	if err != nil {
		return nil, err
	}
	v, _ := c.m.LoadOrStore(host, cert)
	return v.(*tls.Certificate), nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address")
	caCert := flag.String("ca-cert", "", "MITM CA certificate (PEM)")
	caKey := flag.String("ca-key", "", "MITM CA key (PEM)")
	upstreamCA := flag.String("upstream-ca", "", "CA the upstreams are verified against")
	token := flag.String("token", "", "bearer token to inject")
	blind := flag.String("blind", "", "a host name tunnelled without interception")
	flag.Parse()

	ca, err := tls.LoadX509KeyPair(*caCert, *caKey)
	if err != nil {
		log.Fatal(err)
	}
	pem, err := os.ReadFile(*upstreamCA)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	loopback := func(addr string) string {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return addr
		}
		return net.JoinHostPort("127.0.0.1", port)
	}
	dialer := &net.Dialer{}

	proxy := goproxy.NewProxyHttpServer()
	proxy.CertStore = &certCache{}
	proxy.Tr = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		MaxIdleConnsPerHost: 256,
		Proxy:               nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, loopback(addr))
		},
	}
	proxy.ConnectDial = func(network, addr string) (net.Conn, error) {
		return net.Dial(network, loopback(addr))
	}
	mitm := &goproxy.ConnectAction{Action: goproxy.ConnectMitm, TLSConfig: goproxy.TLSConfigFromCA(&ca)}
	proxy.OnRequest().HandleConnect(goproxy.FuncHttpsHandler(
		func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
			// The bench's byte sink is tunnelled, not intercepted, as the other proxies do.
			if name, _, _ := net.SplitHostPort(host); name == *blind {
				return goproxy.OkConnect, host
			}
			return mitm, host
		}))
	bearer := "Bearer " + *token
	proxy.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		r.Header.Set("Authorization", bearer)
		return r, nil
	})

	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", l.Addr())
	log.Fatal(http.Serve(l, proxy))
}
