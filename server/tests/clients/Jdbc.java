// pgJDBC (Debian's libpostgresql-jdbc-java) against Sluice: DatabaseMetaData.getTables,
// getColumns and getPrimaryKeys (pgJDBC's catalog queries), a prepared statement executed more
// than prepareThreshold times (pgJDBC then names it on the server and switches to binary
// transfer), and setFetchSize with autocommit off.
//
// Usage: java -cp /usr/share/java/postgresql.jar Jdbc.java PORT. Prints one line per check;
// exits non-zero on error.

import java.sql.*;

public class Jdbc {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/sluice?user=sluice&prepareThreshold=5";
        try (Connection c = DriverManager.getConnection(url)) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("product " + md.getDatabaseProductName() + " " + md.getDatabaseMajorVersion());
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jdbc_orders");
                s.execute("CREATE TABLE jdbc_orders (id BIGINT PRIMARY KEY, name VARCHAR(20), qty INT, amount DOUBLE PRECISION)");
            }
            try (ResultSet rs = md.getTables(null, "public", "jdbc_%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    System.out.println("table " + rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + " " + rs.getString("TABLE_TYPE"));
                }
            }
            try (ResultSet rs = md.getColumns(null, "public", "jdbc_orders", "%")) {
                while (rs.next()) {
                    System.out.println("column " + rs.getString("COLUMN_NAME") + " " + rs.getInt("DATA_TYPE") + " " + rs.getString("TYPE_NAME") + " "
                        + rs.getInt("COLUMN_SIZE") + " " + rs.getString("IS_NULLABLE") + " " + rs.getInt("ORDINAL_POSITION"));
                }
            }
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "jdbc_orders")) {
                while (rs.next()) {
                    System.out.println("pk " + rs.getString("COLUMN_NAME") + " " + rs.getInt("KEY_SEQ") + " " + rs.getString("PK_NAME"));
                }
            }
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_orders VALUES (?, ?, ?, ?)")) {
                for (int i = 1; i <= 7; i++) {
                    ins.setLong(1, i);
                    ins.setString(2, "n" + i);
                    if (i % 2 == 0) ins.setNull(3, Types.INTEGER); else ins.setInt(3, i * 10);
                    ins.setDouble(4, i * 1.5);
                    System.out.println("insert " + i + " " + ins.executeUpdate());
                }
            }
            try (PreparedStatement q = c.prepareStatement("SELECT id, name, qty, amount FROM jdbc_orders WHERE id = ?")) {
                for (int i = 1; i <= 7; i++) {
                    q.setLong(1, i);
                    try (ResultSet rs = q.executeQuery()) {
                        rs.next();
                        Object qty = rs.getObject(3);
                        System.out.println("select " + rs.getLong(1) + " " + rs.getString(2) + " " + qty + " " + rs.getDouble(4));
                    }
                }
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.setFetchSize(2);
                int n = 0;
                try (ResultSet rs = s.executeQuery("SELECT id FROM jdbc_orders ORDER BY id")) {
                    while (rs.next()) n++;
                }
                System.out.println("fetched " + n);
            }
            c.commit();
            c.setAutoCommit(true);
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM jdbc_orders")) {
                rs.next();
                System.out.println("count " + rs.getLong(1) + " " + rs.getMetaData().getColumnName(1));
            }
        }
        System.out.println("ok");
    }
}
