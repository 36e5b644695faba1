// Test peer: an HTTPS server and client on Go's own crypto/tls (no OpenSSL), no tracing code.
//
//	tlspeer server PORT CERT KEY  serves HTTPS on 127.0.0.1:PORT (0: any), prints "PORT <n>".
//	                              GET /status/<code> answers <code>; anything else 200.
//	tlspeer client CA URL...      GETs each URL in order on one keep-alive HTTP/1.1
//	                              connection, prints "STATUS <code> <body length>" per
//	                              request, then "DONE". TLSPEER_WAIT_MS: milliseconds to
//	                              wait before the first request.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func serve(port, cert, key string) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fail(err)
	}
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		code := http.StatusOK
		if strings.HasPrefix(r.URL.Path, "/status/") {
			if c, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/")); err == nil {
				code = c
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(code)
		io.WriteString(w, "hello from go\n")
	})
	srv := &http.Server{
		Handler: mux,
		// HTTP/1.1 only: the client below speaks it, and so does curl --http1.1.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{pair}},
	}
	fail(srv.ServeTLS(ln, "", ""))
}

func client(ca string, urls []string) {
	if wait, err := strconv.Atoi(os.Getenv("TLSPEER_WAIT_MS")); err == nil {
		time.Sleep(time.Duration(wait) * time.Millisecond)
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		fail(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		MaxIdleConnsPerHost: 1,
	}}
	for _, u := range urls {
		resp, err := c.Get(u)
		if err != nil {
			fail(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("STATUS %d %d\n", resp.StatusCode, len(body))
	}
	fmt.Println("DONE")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tlspeer:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) == 5 && os.Args[1] == "server" {
		serve(os.Args[2], os.Args[3], os.Args[4])
	} else if len(os.Args) >= 4 && os.Args[1] == "client" {
		client(os.Args[2], os.Args[3:])
	} else {
		fmt.Fprintln(os.Stderr, "usage: tlspeer server PORT CERT KEY | tlspeer client CA URL...")
		os.Exit(2)
	}
}
