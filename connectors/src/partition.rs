//! Placement of keys in partitions, as Kafka's default partitioner places them.
//!
//! A changelog row goes to partition `toPositive(murmur2(key)) % partitions`, where `key` is the
//! row's key (the primary key, or the whole row) serialized as a JSON object of its columns,
//! `{"id":1}`, as `upsert-kafka`'s `'key.format' = 'json'` writes a message key, and `murmur2`
//! is the hash of Kafka's Java client (`org.apache.kafka.common.utils.Utils.murmur2`). The
//! placement is a specified function of the key's bytes, never of a hash seed or a library
//! version, so it is stable across restarts and releases, and Sluice puts a key in the same
//! partition as any Kafka producer with the default partitioner (what co-partitioning with
//! outside topics needs).

use arrow::array::RecordBatch;

use crate::error::Result;
use crate::format::rows_to_json_bytes;

/// Kafka's murmur2 (seed `0x9747b28c`), a signed 32-bit hash as the Java client returns it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a serialized key: Kafka's `toPositive(murmur2(key)) % partitions`.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions.max(1)
}

/// The partition of every row of `keys` (the key columns of a batch), see the module docs.
///
/// Errors: a key column type the JSON writer cannot encode.
pub fn partitions_of_rows(keys: &RecordBatch, partitions: u32) -> Result<Vec<u32>> {
    if partitions <= 1 {
        return Ok(vec![0; keys.num_rows()]);
    }
    Ok(rows_to_json_bytes(keys)?.iter().map(|k| partition_of(k, partitions)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn murmur2_is_kafkas() {
        // Kafka's own vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), want, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn rows_are_placed_by_their_json_key() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        let keys = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![1, 2, 1])), Arc::new(StringArray::from(vec![Some("a"), None, Some("a")]))],
        )
        .unwrap();
        let parts = partitions_of_rows(&keys, 7).unwrap();
        assert_eq!(parts[0], partition_of(br#"{"id":1,"s":"a"}"#, 7));
        assert_eq!(parts[1], partition_of(br#"{"id":2,"s":null}"#, 7));
        assert_eq!(parts[0], parts[2]);
        assert_eq!(partitions_of_rows(&keys, 1).unwrap(), vec![0, 0, 0]);
    }
}
