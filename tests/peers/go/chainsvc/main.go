// Test peer: a Go net/http service that calls another HTTP service from a goroutine it starts
// and queries PostgreSQL through database/sql (lib/pq), with no tracing code.
//
//	chainsvc PORT DOWNSTREAM PGDSN  serves HTTP/1.1 on 127.0.0.1:PORT (0: any), prints
//	                                "PORT <n>"; over TLS (crypto/tls) when CHAINSVC_CERT and
//	                                CHAINSVC_KEY name a certificate and its key.
//
// GET /work/<id>: a goroutine started by the handler GETs DOWNSTREAM/item/<id> with one
// shared keep-alive client (its connections, and the goroutines that write them, serve every
// request); meanwhile the handler runs "SELECT <id> AS req_<id>" on a small shared connection
// pool; it answers "<id> <downstream body length> <row>" once both are done.
package main

import (
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	_ "github.com/lib/pq"
)

func main() {
	if len(os.Args) != 4 {
		fail(fmt.Errorf("usage: chainsvc PORT DOWNSTREAM PGDSN"))
	}
	port, downstream, dsn := os.Args[1], os.Args[2], os.Args[3]
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		fail(err)
	}
	// Fewer connections than concurrent requests: a connection opened for one request is
	// used by others.
	db.SetMaxOpenConns(4)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fail(err)
	}
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	http.HandleFunc("/work/", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/work/"))
		if err != nil {
			http.Error(w, "bad id", http.StatusBadRequest)
			return
		}
		// Let the concurrent requests pile up, so that their goroutines share threads.
		time.Sleep(20 * time.Millisecond)
		got := make(chan string, 1)
		go func() {
			resp, err := client.Get(fmt.Sprintf("%s/item/%d", downstream, id))
			if err != nil {
				got <- "error: " + err.Error()
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got <- strconv.Itoa(len(body))
		}()
		var row int
		query := fmt.Sprintf("SELECT %d AS req_%d", id, id)
		if err := db.QueryRow(query).Scan(&row); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%d %s %d", id, <-got, row)
	})
	if cert := os.Getenv("CHAINSVC_CERT"); cert != "" {
		fail(http.ServeTLS(ln, nil, cert, os.Getenv("CHAINSVC_KEY")))
	}
	fail(http.Serve(ln, nil))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "chainsvc:", err)
	os.Exit(1)
}
