// Test peer: gRPC over TLS with grpc-go (Debian's golang-google-grpc-dev, built in GOPATH
// mode) and Go's own crypto/tls; the standard health service, so no generated code of ours.
// No tracing code.
//
//	grpcpeer server PORT CERT KEY  serves on 127.0.0.1:PORT, prints "PORT <n>"; the service
//	                               "" is SERVING, any other name is unknown (NOT_FOUND).
//	grpcpeer client PORT CA N      N Health/Check calls for "", then one for "missing", on one
//	                               connection; prints each call's status code, then "DONE".
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

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

func client(port, ca string, n int) {
	creds, err := credentials.NewClientTLSFromFile(ca, "127.0.0.1")
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, "127.0.0.1:"+port, grpc.WithTransportCredentials(creds), grpc.WithBlock())
	if err != nil {
		fail(err)
	}
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

func fail(err error) {
	fmt.Fprintln(os.Stderr, "grpcpeer:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) == 5 && os.Args[1] == "server" {
		serve(os.Args[2], os.Args[3], os.Args[4])
	} else if len(os.Args) == 5 && os.Args[1] == "client" {
		n, err := strconv.Atoi(os.Args[4])
		if err != nil {
			fail(err)
		}
		client(os.Args[2], os.Args[3], n)
	} else {
		fmt.Fprintln(os.Stderr, "usage: grpcpeer server PORT CERT KEY | grpcpeer client PORT CA N")
		os.Exit(2)
	}
}
