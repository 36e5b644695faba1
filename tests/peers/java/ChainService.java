// Test peer: a Java service on the JDK's built-in HTTP server with an executor pool, calling
// another HTTP service, with no tracing code. Run as a single source file: `java ChainService.java
// PORT DOWNSTREAM`; prints "PORT <n>" once listening.
//
//   GET /work/<i>     the pool thread serving the request calls DOWNSTREAM/item/<i>
//                     (HttpURLConnection, blocking, on that thread) and answers with its status.
//   GET /handoff/<i>  the serving thread hands the call to a second pool and waits for it: the
//                     call is made on another thread.
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

public class ChainService {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String downstream = args[1];
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        ExecutorService callers = Executors.newFixedThreadPool(4);
        server.createContext("/work/", ex -> answer(ex, call(downstream, id(ex))));
        server.createContext("/handoff/", ex -> {
            String i = id(ex);
            int status;
            try {
                status = callers.submit(() -> call(downstream, i)).get();
            } catch (Exception e) {
                status = 599;
            }
            answer(ex, status);
        });
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.start();
        System.out.println("PORT " + server.getAddress().getPort());
        System.out.flush();
    }

    static String id(HttpExchange ex) {
        String path = ex.getRequestURI().getPath();
        return path.substring(path.lastIndexOf('/') + 1);
    }

    static int call(String downstream, String i) {
        try {
            // Let the concurrent requests overlap on the pool.
            Thread.sleep(20);
            HttpURLConnection c = (HttpURLConnection) new URL(downstream + "/item/" + i).openConnection();
            int status = c.getResponseCode();
            try (InputStream in = c.getInputStream()) {
                in.readAllBytes();
            }
            return status;
        } catch (Exception e) {
            return 599;
        }
    }

    static void answer(HttpExchange ex, int status) {
        try {
            ex.getRequestBody().readAllBytes();
            byte[] body = ("downstream " + status + "\n").getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(status == 200 ? 200 : 502, body.length);
            try (OutputStream out = ex.getResponseBody()) {
                out.write(body);
            }
        } catch (Exception e) {
            ex.close();
        }
    }
}
