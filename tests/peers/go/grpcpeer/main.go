// Test peer: gRPC over TLS with grpc-go (Debian's golang-google-grpc-dev, built in GOPATH
// mode) and Go's own crypto/tls; the standard health service, so no generated code of ours.
// No tracing code.
//
//	grpcpeer server PORT CERT KEY  serves on 127.0.0.1:PORT, prints "PORT <n>"; the service
//	                               "" is SERVING, any other name is unknown (NOT_FOUND).
//	grpcpeer client PORT CA N      N Health/Check calls for "", then one for "missing", on one
//	                               connection; prints each call's status code, then "DONE".
//	grpcpeer concurrent PORT CA N  N Health/Check calls for "" at once on one connection, each
//	                               with its own 200-byte `x-pad` header (so that HPACK cannot
//	                               shrink them and the client's writes run past 8 KiB); prints
//	                               "OK <count of OK>" then "DONE".
//	grpcpeer h2client ADDR         cleartext (h2 prior knowledge) client on one connection,
//	                               opened at the first call: prints "READY", then per line on
//	                               stdin: `unary` (Check),
//	                               `stream N` (Watch, the server sends N messages), `traced`
//	                               (Check carrying traceparent TRACED), `quit`. Prints
//	                               "RESP <method> <status of each response, comma-separated>".
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The traceparent the `traced` call brings itself (as in tests/peers/grpc_tp_peer.py).
const traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

func h2client(addr string) {
	// Connects at the first call, not before: grpc-go dials at once in the background, and the
	// test's agent must see the connection open.
	fmt.Println("READY")
	var c healthpb.HealthClient
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 || f[0] == "quit" {
			return
		}
		if c == nil {
			conn, err := grpc.Dial(addr, grpc.WithInsecure())
			if err != nil {
				fail(err)
			}
			defer conn.Close()
			c = healthpb.NewHealthClient(conn)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		switch f[0] {
		case "unary", "traced":
			if f[0] == "traced" {
				ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", traced)
			}
			r, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "echo"})
			if err != nil {
				fail(err)
			}
			fmt.Printf("RESP Check %s\n", r.Status)
		case "stream":
			s, err := c.Watch(ctx, &healthpb.HealthCheckRequest{Service: f[1]})
			if err != nil {
				fail(err)
			}
			var got []string
			for {
				r, err := s.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					fail(err)
				}
				got = append(got, r.Status.String())
			}
			fmt.Printf("RESP Watch %s\n", strings.Join(got, ","))
		default:
			fail(fmt.Errorf("unknown step %q", f[0]))
		}
		cancel()
	}
}

func serve(port, cert, key string) {
	creds, err := credentials.NewServerTLSFromFile(cert, key)
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fail(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	fail(srv.Serve(ln))
}

// dial connects over TLS to the server on 127.0.0.1:PORT whose certificate CA signed.
func dial(ctx context.Context, port, ca string) *grpc.ClientConn {
	creds, err := credentials.NewClientTLSFromFile(ca, "127.0.0.1")
	if err != nil {
		fail(err)
	}
	conn, err := grpc.DialContext(ctx, "127.0.0.1:"+port, grpc.WithTransportCredentials(creds), grpc.WithBlock())
	if err != nil {
		fail(err)
	}
	return conn
}

func client(port, ca string, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := dial(ctx, port, ca)
	defer conn.Close()
	c := healthpb.NewHealthClient(conn)
	for i := 0; i <= n; i++ {
		name := ""
		if i == n {
			name = "missing"
		}
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		fmt.Println(status.Code(err))
	}
	fmt.Println("DONE")
}

func concurrent(port, ca string, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := dial(ctx, port, ca)
	defer conn.Close()
	c := healthpb.NewHealthClient(conn)
	start := make(chan struct{})
	results := make(chan grpccodes.Code, n)
	for i := 0; i < n; i++ {
		pad := fmt.Sprintf("%03d%s", i, strings.Repeat(string(rune('a'+i%26)), 197))
		go func() {
			<-start
			call := metadata.AppendToOutgoingContext(ctx, "x-pad", pad)
			_, err := c.Check(call, &healthpb.HealthCheckRequest{Service: ""})
			results <- status.Code(err)
		}()
	}
	close(start)
	ok := 0
	for i := 0; i < n; i++ {
		if <-results == grpccodes.OK {
			ok++
		}
	}
	fmt.Printf("OK %d\nDONE\n", ok)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "grpcpeer:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) == 5 && os.Args[1] == "server" {
		serve(os.Args[2], os.Args[3], os.Args[4])
	} else if len(os.Args) == 5 && os.Args[1] == "concurrent" {
		n, err := strconv.Atoi(os.Args[4])
		if err != nil {
			fail(err)
		}
		concurrent(os.Args[2], os.Args[3], n)
	} else if len(os.Args) == 3 && os.Args[1] == "h2client" {
		h2client(os.Args[2])
	} else if len(os.Args) == 5 && os.Args[1] == "client" {
		n, err := strconv.Atoi(os.Args[4])
		if err != nil {
			fail(err)
		}
		client(os.Args[2], os.Args[3], n)
	} else {
		fmt.Fprintln(os.Stderr, "usage: grpcpeer server PORT CERT KEY | grpcpeer client PORT CA N | grpcpeer concurrent PORT CA N | grpcpeer h2client ADDR")
		os.Exit(2)
	}
}
