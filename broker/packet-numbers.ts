import mqttPacket from 'mqtt-packet';

/**
 * mqtt-packet (under both aedes and MQTT.js, one copy per process) writes message ids and lengths
 * from a cache of 65,536 two-byte Buffers that it builds at its first packet: about 7 MB of heap
 * for every broker, agent and gateway process, in objects the garbage collector walks on every full
 * collection. Writing each number into a fresh pooled Buffer instead costs next to nothing. Must run
 * before the first packet is written: imported by the modules that make MQTT connections.
 */
mqttPacket.writeToStream.cacheNumbers = false;
