package sparkmlext;

import java.io.IOException;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Iterator;
import java.util.Locale;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.TreeMap;
import java.util.UUID;

import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.function.FlatMapFunction;
import org.apache.spark.rdd.RDD;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.util.ArrayData;

/**
 * The staging write pass's encoder on the JVM: a partition's rows (Spark's internal rows of the projection
 * `validate.select_columns` makes: the feature column(s), then the label, then the uid) become framed
 * RecordIO-protobuf bytes, byte for byte what recordio/encode.py writes, handed to Python as a few large binary
 * chunks instead of the rows themselves. While it encodes, it counts the same per-partition stats as
 * `validate.add_batch_stats`; from the first row that makes the partition invalid it only counts.
 *
 * Output rows: (split int, records long, data binary, stats string). Chunk rows carry the records of one shard
 * (`split`: the shard index in the partition, rolling over at the target bytes); the last row of a partition has
 * data null and its stats as JSON (`finish_stats`'s layout). With a local directory in the config the shards are
 * written here instead (as `writer.ShardOutput` does: a temp file renamed on commit) and the rows are the write
 * pass's results (partition int, split int, path string, records long, bytes long, sha256 string, stats string):
 * one per committed shard, then the stats row (split -1).
 */
public final class RecordIOEncoder {
    static final int MAGIC = 0xCED7230A;
    static final int MAX_PAYLOAD = (1 << 29) - 1;
    static final int VECTOR = 0;
    static final int ARRAY = 1;
    static final int COLUMNS = 2;
    static final byte[] KEY_VALUES = {0x0A, 0x06, 'v', 'a', 'l', 'u', 'e', 's'};
    static final VarHandle INT = MethodHandles.byteArrayViewVarHandle(int[].class, ByteOrder.LITTLE_ENDIAN);
    static final VarHandle LONG = MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.LITTLE_ENDIAN);

    private RecordIOEncoder() {
    }

    /** Encode every partition of `rows` as described by `config` (`key=value` pairs separated by ';'). */
    public static JavaRDD<Row> encode(RDD<InternalRow> rows, String config) {
        return rows.toJavaRDD().mapPartitions(new Task(Config.parse(config)), true);
    }

    /** The per-partition function (a named class rather than a lambda: it must deserialize on executors). */
    static final class Task implements FlatMapFunction<Iterator<InternalRow>, Row> {
        private static final long serialVersionUID = 1L;
        private final Config cfg;

        Task(Config cfg) {
            this.cfg = cfg;
        }

        @Override
        public Iterator<Row> call(Iterator<InternalRow> rows) {
            return new PartitionEncoder(cfg, rows);
        }
    }

    /** What to encode: the features' layout, the columns present, the output dtype and the shard rolling. */
    static final class Config implements java.io.Serializable {
        private static final long serialVersionUID = 1L;
        int kind;               // VECTOR, ARRAY or COLUMNS
        int nFeatures;          // feature columns (1 unless kind is columns)
        boolean arrayOfFloat;   // kind array: elements are float (else double)
        boolean[] columnFloat;  // kind columns: each column is float (else double)
        boolean hasLabel;
        boolean hasUid;
        boolean float64;        // output tensors: float64 (else float32)
        boolean training;
        double[] labelValues;   // null: any label
        long targetBytes;       // <= 0: one shard per partition
        int chunkBytes;
        boolean encode;         // false: count the stats only
        String dir;             // a local directory: write the shards there (else hand chunks on)

        static Config parse(String text) {
            Map<String, String> kv = new HashMap<>();
            for (String part : text.split(";")) {
                int eq = part.indexOf('=');
                if (eq > 0) {
                    kv.put(part.substring(0, eq), part.substring(eq + 1));
                }
            }
            Config c = new Config();
            String kind = need(kv, "kind");
            c.kind = kind.equals("vector") ? VECTOR : kind.equals("array") ? ARRAY : kind.equals("columns") ? COLUMNS
                    : -1;
            if (c.kind < 0) {
                throw new IllegalArgumentException("unknown features kind " + kind);
            }
            String types = need(kv, "types");  // one letter per feature column: f (float) or d (double or vector)
            c.nFeatures = types.length();
            c.columnFloat = new boolean[c.nFeatures];
            for (int i = 0; i < c.nFeatures; i++) {
                c.columnFloat[i] = types.charAt(i) == 'f';
            }
            c.arrayOfFloat = c.kind == ARRAY && c.columnFloat[0];
            c.hasLabel = need(kv, "label").equals("1");
            c.hasUid = need(kv, "uid").equals("1");
            c.float64 = need(kv, "dtype").equals("float64");
            c.training = need(kv, "training").equals("1");
            String values = kv.get("label_values");
            if (values != null) {
                String[] parts = values.isEmpty() ? new String[0] : values.split(",");
                c.labelValues = new double[parts.length];
                for (int i = 0; i < parts.length; i++) {
                    c.labelValues[i] = Double.parseDouble(parts[i]);
                }
            }
            c.targetBytes = Long.parseLong(need(kv, "target"));
            c.chunkBytes = Integer.parseInt(need(kv, "chunk"));
            c.encode = need(kv, "encode").equals("1");
            String dirHex = kv.get("dir_hex");  // hex of the UTF-8 path, so any character survives the format
            if (dirHex != null) {
                byte[] raw = new byte[dirHex.length() / 2];
                for (int i = 0; i < raw.length; i++) {
                    raw[i] = (byte) Integer.parseInt(dirHex.substring(2 * i, 2 * i + 2), 16);
                }
                c.dir = new String(raw, StandardCharsets.UTF_8);
            }
            return c;
        }

        private static String need(Map<String, String> kv, String key) {
            String v = kv.get(key);
            if (v == null) {
                throw new IllegalArgumentException("encoder config lacks " + key);
            }
            return v;
        }
    }

    /** The per-partition stats of `validate.new_stats`, counted row by row. */
    static final class Stats {
        long rows;
        long sparseRows;
        final long[] nullFeatures;
        long nullElements;
        long nullLabel;
        long nonfiniteLabel;
        long nullUid;
        long nonfiniteFeatures;
        long otherLabels;
        final TreeMap<Long, Long> sizes = new TreeMap<>();

        Stats(int nFeatures) {
            nullFeatures = new long[nFeatures];
        }

        void size(long dim, long count) {
            sizes.merge(dim, count, Long::sum);
        }

        boolean problem() {
            for (long n : nullFeatures) {
                if (n != 0) {
                    return true;
                }
            }
            return nullElements != 0 || nonfiniteFeatures != 0 || nullLabel != 0 || nonfiniteLabel != 0
                    || otherLabels != 0 || nullUid != 0 || sizes.size() > 1;
        }

        String toJson() {
            StringBuilder sb = new StringBuilder(256);
            sb.append("{\"rows\": ").append(rows).append(", \"sparse_rows\": ").append(sparseRows)
                    .append(", \"null_features\": [");
            for (int i = 0; i < nullFeatures.length; i++) {
                sb.append(i == 0 ? "" : ", ").append(nullFeatures[i]);
            }
            sb.append("], \"null_elements\": ").append(nullElements).append(", \"null_label\": ").append(nullLabel)
                    .append(", \"nonfinite_label\": ").append(nonfiniteLabel).append(", \"null_uid\": ").append(nullUid)
                    .append(", \"sizes\": [");
            boolean first = true;
            for (Map.Entry<Long, Long> e : sizes.entrySet()) {
                sb.append(first ? "" : ", ").append('[').append(e.getKey()).append(", ").append(e.getValue())
                        .append(']');
                first = false;
            }
            sb.append("], \"nonfinite_features\": ").append(nonfiniteFeatures).append(", \"other_labels\": ")
                    .append(otherLabels).append('}');
            return sb.toString();
        }
    }

    /** One partition: rows in, chunk rows and a final stats row out, lazily (memory: one chunk at a time). */
    static final class PartitionEncoder implements Iterator<Row> {
        private final Config c;
        private final Iterator<InternalRow> in;
        private final Stats st;
        private final ArrayDeque<Row> ready = new ArrayDeque<>();
        private final int labelAt;
        private final int uidAt;
        private final byte tag;
        private final int itemSize;
        private byte[] buf;
        private int pos;
        private long chunkRecords;
        private int split;
        private long shardBytes;
        private long written;
        private long encoded;
        private boolean failed;
        private boolean finished;
        private final int partition;
        private ShardFile shard;

        PartitionEncoder(Config c, Iterator<InternalRow> in) {
            this.c = c;
            this.in = in;
            this.st = new Stats(c.nFeatures);
            this.labelAt = c.hasLabel ? c.nFeatures : -1;
            this.uidAt = c.hasUid ? c.nFeatures + (c.hasLabel ? 1 : 0) : -1;
            this.tag = (byte) (c.float64 ? 0x1A : 0x12);
            this.itemSize = c.float64 ? 8 : 4;
            this.buf = new byte[c.encode ? Math.max(c.chunkBytes, 64) : 0];
            this.partition = TaskContext.getPartitionId();
        }

        @Override
        public boolean hasNext() {
            while (ready.isEmpty() && !finished) {
                step();
            }
            return !ready.isEmpty();
        }

        @Override
        public Row next() {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            return ready.poll();
        }

        /** Read one row (or finish the partition), queueing any rows it completes. */
        private void step() {
            if (!in.hasNext()) {
                if (!failed) {
                    flush();
                    commitShard();
                    if (c.dir != null && written != st.rows) {
                        throw new IllegalStateException("partition " + partition + ": wrote " + written
                                + " records of the " + st.rows + " rows it read");
                    }
                }
                ready.add(c.dir == null ? RowFactory.create(-1, 0L, null, st.toJson())
                        : RowFactory.create(partition, -1, "", 0L, 0L, "", st.toJson()));
                finished = true;
                return;
            }
            InternalRow row = in.next();
            count(row);
            if (failed || !c.encode) {
                return;
            }
            if (st.problem()) {  // nothing more is encoded; what is buffered is dropped (the driver rolls back)
                failed = true;
                pos = 0;
                chunkRecords = 0;
                buf = new byte[0];
                if (shard != null) {
                    shard.abort();
                    shard = null;
                }
                return;
            }
            int frame = encodeRow(row);
            written++;
            encoded += frame;
            shardBytes += frame;
            if (c.targetBytes > 0 && shardBytes + (encoded / (double) written) / 2 >= c.targetBytes) {
                flush();
                commitShard();
                split++;
                shardBytes = 0;
            }
        }

        /** Hand the buffered records on: one chunk row of the current shard, or appended to its file. */
        private void flush() {
            if (chunkRecords > 0) {
                if (c.dir == null) {
                    ready.add(RowFactory.create(split, chunkRecords, Arrays.copyOf(buf, pos), null));
                } else {
                    if (shard == null) {
                        shard = new ShardFile(c.dir, partition, split);
                    }
                    shard.write(buf, pos, chunkRecords);
                }
            }
            pos = 0;
            chunkRecords = 0;
        }

        /** Commit the current shard file, if any, and queue its result row. */
        private void commitShard() {
            if (shard != null) {
                ready.add(shard.commit(partition));
                shard = null;
            }
        }

        // ---- stats (validate.add_batch_stats, one row at a time) ----

        private void count(InternalRow row) {
            st.rows++;
            if (c.kind == COLUMNS) {
                boolean nonfinite = false;
                for (int j = 0; j < c.nFeatures; j++) {
                    if (row.isNullAt(j)) {
                        st.nullFeatures[j]++;
                    } else if (c.training) {
                        double v = c.columnFloat[j] ? row.getFloat(j) : row.getDouble(j);
                        nonfinite |= !Double.isFinite(v);
                    }
                }
                st.size(c.nFeatures, 1);
                if (nonfinite) {
                    st.nonfiniteFeatures++;
                }
            } else if (row.isNullAt(0)) {
                st.nullFeatures[0]++;
            } else if (c.kind == VECTOR) {
                InternalRow v = row.getStruct(0, 4);
                ArrayData values = v.getArray(3);
                int n = values.numElements();
                boolean sparse = v.getByte(0) == 0;
                if (sparse) {
                    st.sparseRows++;
                }
                st.size(sparse ? v.getInt(1) : n, 1);
                if (c.training) {
                    for (int i = 0; i < n; i++) {
                        if (!Double.isFinite(values.getDouble(i))) {
                            st.nonfiniteFeatures++;
                            break;
                        }
                    }
                }
            } else {
                ArrayData values = row.getArray(0);
                int n = values.numElements();
                st.size(n, 1);
                boolean hasNull = false;
                boolean nonfinite = false;
                for (int i = 0; i < n; i++) {
                    if (values.isNullAt(i)) {
                        hasNull = true;
                    } else if (c.training) {
                        double x = c.arrayOfFloat ? values.getFloat(i) : values.getDouble(i);
                        nonfinite |= !Double.isFinite(x);
                    }
                }
                if (hasNull) {
                    st.nullElements++;
                }
                if (nonfinite) {
                    st.nonfiniteFeatures++;
                }
            }
            if (c.hasLabel) {
                if (row.isNullAt(labelAt)) {
                    st.nullLabel++;
                } else if (c.training) {
                    double y = row.getDouble(labelAt);
                    if (!Double.isFinite(y)) {
                        st.nonfiniteLabel++;
                    } else if (c.labelValues != null) {
                        boolean known = false;
                        long bits = Double.doubleToLongBits(y);
                        for (double allowed : c.labelValues) {  // bit for bit, as Arrow's is_in: -0.0 is not 0.0
                            known |= Double.doubleToLongBits(allowed) == bits;
                        }
                        if (!known) {
                            st.otherLabels++;
                        }
                    }
                }
            }
            if (c.hasUid && row.isNullAt(uidAt)) {
                st.nullUid++;
            }
        }

        // ---- encoding (recordio/encode.py's encode_rows, one row at a time) ----

        /** Append one valid row's framed Record to the chunk; return the frame's size. */
        private int encodeRow(InternalRow row) {
            ArrayData values = null;
            ArrayData keys = null;
            long dim = 0;
            int n;
            boolean sparse = false;
            if (c.kind == COLUMNS) {
                n = c.nFeatures;
            } else if (c.kind == VECTOR) {
                InternalRow v = row.getStruct(0, 4);
                values = v.getArray(3);
                n = values.numElements();
                sparse = v.getByte(0) == 0;
                if (sparse) {
                    keys = v.getArray(2);
                    dim = v.getInt(1);
                    int nk = keys == null ? 0 : keys.numElements();
                    if (nk != n) {
                        throw new IllegalArgumentException("sparse vector with " + nk + " indices but " + n
                                + " values");
                    }
                }
            } else {
                values = row.getArray(0);
                n = values.numElements();
            }
            long vbytes = (long) n * itemSize;
            long vfield = n > 0 ? 1 + varintSize(vbytes) + vbytes : 0;
            long kbytes = 0;
            long kfield = 0;
            long sfield = 0;
            if (sparse) {
                for (int i = 0; i < n; i++) {
                    kbytes += varintSize(keys.getInt(i));
                }
                kfield = n > 0 ? 1 + varintSize(kbytes) + kbytes : 0;
                sfield = 2 + varintSize(dim);
            }
            long tensor = vfield + kfield + sfield;
            long value = 1 + varintSize(tensor) + tensor;
            long entry = KEY_VALUES.length + 1 + varintSize(value) + value;
            long payload = 1 + varintSize(entry) + entry;
            if (c.hasLabel) {
                payload += 2 + KEY_VALUES.length + 2 + 2 + 2 + itemSize;
            }
            byte[] uid = null;
            if (c.hasUid) {
                uid = row.getUTF8String(uidAt).getBytes();
                payload += 1 + varintSize(uid.length) + uid.length;
            }
            if (payload > MAX_PAYLOAD) {
                throw new IllegalArgumentException("row " + written + " of the partition encodes to " + payload
                        + " bytes, over RecordIO's " + MAX_PAYLOAD + "-byte record limit");
            }
            int frame = (int) (8 + ((payload + 3) & ~3L));
            if (pos > 0 && pos + frame > buf.length) {
                flush();
            }
            if (frame > buf.length) {
                buf = new byte[Math.max(frame, c.chunkBytes)];
            }
            byte[] b = buf;
            int p = pos;
            INT.set(b, p, MAGIC);
            INT.set(b, p + 4, (int) payload);
            p += 8;
            int end = p + (int) payload;
            b[p++] = 0x0A;
            p = putVarint(b, p, entry);
            System.arraycopy(KEY_VALUES, 0, b, p, KEY_VALUES.length);
            p += KEY_VALUES.length;
            b[p++] = 0x12;
            p = putVarint(b, p, value);
            b[p++] = tag;
            p = putVarint(b, p, tensor);
            if (n > 0) {
                b[p++] = 0x0A;
                p = putVarint(b, p, vbytes);
                if (c.kind == COLUMNS) {
                    for (int j = 0; j < n; j++) {
                        p = c.columnFloat[j] ? putFloat(b, p, row.getFloat(j)) : putDouble(b, p, row.getDouble(j));
                    }
                } else if (c.arrayOfFloat) {
                    for (int i = 0; i < n; i++) {
                        p = putFloat(b, p, values.getFloat(i));
                    }
                } else {
                    for (int i = 0; i < n; i++) {
                        p = putDouble(b, p, values.getDouble(i));
                    }
                }
            }
            if (sparse) {
                if (n > 0) {
                    b[p++] = 0x12;
                    p = putVarint(b, p, kbytes);
                    for (int i = 0; i < n; i++) {
                        p = putVarint(b, p, keys.getInt(i));
                    }
                }
                b[p++] = 0x1A;
                b[p++] = (byte) varintSize(dim);
                p = putVarint(b, p, dim);
            }
            if (c.hasLabel) {
                int ltensor = 2 + itemSize;
                int lvalue = 2 + ltensor;
                b[p++] = 0x12;
                b[p++] = (byte) (KEY_VALUES.length + 2 + lvalue);
                System.arraycopy(KEY_VALUES, 0, b, p, KEY_VALUES.length);
                p += KEY_VALUES.length;
                b[p++] = 0x12;
                b[p++] = (byte) lvalue;
                b[p++] = tag;
                b[p++] = (byte) ltensor;
                b[p++] = 0x0A;
                b[p++] = (byte) itemSize;
                p = putDouble(b, p, row.getDouble(labelAt));
            }
            if (uid != null) {
                b[p++] = 0x1A;
                p = putVarint(b, p, uid.length);
                System.arraycopy(uid, 0, b, p, uid.length);
                p += uid.length;
            }
            if (p != end) {
                throw new IllegalStateException("record size mismatch: wrote " + (p - pos - 8) + " of " + payload);
            }
            int stop = pos + frame;
            while (p < stop) {
                b[p++] = 0;  // padding (the buffer is reused)
            }
            pos = stop;
            chunkRecords++;
            return frame;
        }

        /** A double as the output dtype: float32 (rounded, as numpy's astype) or float64. */
        private int putDouble(byte[] b, int p, double d) {
            if (c.float64) {
                LONG.set(b, p, Double.doubleToRawLongBits(d));
                return p + 8;
            }
            INT.set(b, p, quiet(Float.floatToRawIntBits((float) d)));
            return p + 4;
        }

        /** A float as the output dtype (widened exactly for float64). */
        private int putFloat(byte[] b, int p, float f) {
            if (c.float64) {
                LONG.set(b, p, Double.doubleToRawLongBits(f));
                return p + 8;
            }
            INT.set(b, p, quiet(Float.floatToRawIntBits(f)));
            return p + 4;
        }
    }

    /** One shard being written locally (writer.ShardOutput): a temp file, renamed under its final name on commit. */
    static final class ShardFile {
        private final Path tmp;
        private final Path dest;
        private final String name;
        private final int split;
        private final OutputStream out;
        private final MessageDigest sha;
        private long records;
        private long bytes;

        ShardFile(String dir, int partition, int split) {
            this.split = split;
            this.name = String.format(Locale.ROOT, "part-%05d-%03d.rec", partition, split);
            this.dest = Paths.get(dir, name);
            this.tmp = Paths.get(dir, "." + name + "." + UUID.randomUUID().toString().replace("-", "") + ".tmp");
            try {
                this.sha = MessageDigest.getInstance("SHA-256");
                this.out = Files.newOutputStream(tmp);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            } catch (NoSuchAlgorithmException e) {
                throw new IllegalStateException(e);
            }
        }

        void write(byte[] data, int length, long count) {
            try {
                out.write(data, 0, length);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            sha.update(data, 0, length);
            records += count;
            bytes += length;
        }

        Row commit(int partition) {
            try {
                out.close();
                Files.move(tmp, dest, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            StringBuilder hex = new StringBuilder(64);
            for (byte b : sha.digest()) {
                hex.append(Character.forDigit((b >> 4) & 0xF, 16)).append(Character.forDigit(b & 0xF, 16));
            }
            return RowFactory.create(partition, split, name, records, bytes, hex.toString(), null);
        }

        void abort() {
            try {
                out.close();
                Files.deleteIfExists(tmp);
            } catch (IOException e) {
                // best effort: the driver removes stray temp files
            }
        }
    }

    /** Set the quiet bit of a float32 signalling NaN, as protobuf's float path (and recordio.tensor) does. */
    static int quiet(int bits) {
        if ((bits & 0x7F800000) == 0x7F800000 && (bits & 0x7FFFFF) != 0) {
            return bits | 0x400000;
        }
        return bits;
    }

    /** Bytes a value takes as a protobuf varint (negative ints are sign-extended to 10 bytes). */
    static int varintSize(long v) {
        if (v < 0) {
            return 10;
        }
        return v == 0 ? 1 : (63 - Long.numberOfLeadingZeros(v)) / 7 + 1;
    }

    static int putVarint(byte[] b, int p, long v) {
        while ((v & ~0x7FL) != 0) {
            b[p++] = (byte) ((v & 0x7F) | 0x80);
            v >>>= 7;
        }
        b[p++] = (byte) v;
        return p;
    }
}
